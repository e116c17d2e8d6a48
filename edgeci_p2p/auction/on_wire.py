"""The one conversion between AWAS messages and their wire messages (both pure).

The wire carries the AWAS messages field for field (``tests/test_wire_auction_compat.py``
holds the two in step); a call for bids also carries the model's name, which the
auction does not use and the receiving daemon needs.
"""

from __future__ import annotations

from typing import Any

from edgeci_p2p.auction import messages as am
from edgeci_p2p.wire import messages as wm

AuctionMessage = am.CallForBids | am.Bid | am.Award | am.AwardReply | am.Release
WireAuctionMessage = wm.CallForBids | wm.Bid | wm.Award | wm.AwardReply | wm.Release

WIRE_TYPE: dict[type[Any], str] = {
    am.CallForBids: wm.CallForBids.TYPE,
    am.Bid: wm.Bid.TYPE,
    am.Award: wm.Award.TYPE,
    am.AwardReply: wm.AwardReply.TYPE,
    am.Release: wm.Release.TYPE,
}
_AUCTION_TYPE: dict[type[Any], type[Any]] = {
    wm.CallForBids: am.CallForBids,
    wm.Bid: am.Bid,
    wm.Award: am.Award,
    wm.AwardReply: am.AwardReply,
    wm.Release: am.Release,
}


def to_wire(msg: AuctionMessage) -> wm.Message:
    """The wire message carrying ``msg``."""
    return wm.message_from_wire({"type": WIRE_TYPE[type(msg)], **msg.to_dict()})


def from_wire(msg: WireAuctionMessage) -> AuctionMessage:
    """The AWAS message a wire message carries (raises ``am.MessageError``,
    ``ValueError`` or ``KeyError`` when it does not make one)."""
    body = {k: v for k, v in msg.to_dict().items() if k != "model"}
    converted: AuctionMessage = _AUCTION_TYPE[type(msg)].from_dict(body)
    return converted
