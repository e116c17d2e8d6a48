"""Winner determination: who gets which item, from the bids (pure).

Two cases (BRIEF 2.4):

* **More items than peers** (:func:`reverse_auction`). Items are sold one at a
  time, largest first (LPT order); the lowest predicted finish wins; the winner's
  queue grows by the item's duration, so the next item is priced against the new
  queue. Minimising the makespan of unrelated machines is NP-hard and this greedy
  alone can land 20-30% above the optimum on small instances, so it is followed
  by a local search: single-item moves and pairwise swaps between two peers,
  accepted when they lower the later of the two peers' finish times. That
  improvement is ours, not the paper's; ``tests/test_auction_winner.py`` checks
  the result against :func:`optimal_assignment` (exhaustive, over subsets).
* **One item per peer** (:func:`bottleneck_assignment`, used to place DPFL's
  strips). The makespan of a one-to-one assignment is its largest finish time: a
  threshold search whose feasibility test is a Bertsekas epsilon-auction
  (:func:`epsilon_auction`) on 0/1 costs, then a second auction that, among the
  assignments meeting that makespan, minimises the sum of finish times.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeci_p2p.auction.messages import Bid

INF = math.inf
EPS = 1e-12


class InfeasibleAssignment(ValueError):
    """No assignment gives every item to a peer that priced it."""


@dataclass(frozen=True)
class Assignment:
    """The outcome: an owner per item and each winning peer's predicted finish."""

    owner: Mapping[str, str]
    """Item id -> peer name."""
    finish: Mapping[str, float]
    """Peer name -> predicted finish (its backlog plus its items), winners only."""
    unplaced: tuple[str, ...] = ()
    """Items no bidder priced: the auctioneer runs them itself."""

    @property
    def makespan(self) -> float:
        return max(self.finish.values(), default=0.0)

    def items_of(self, peer: str) -> list[str]:
        return [i for i, p in self.owner.items() if p == peer]


@dataclass(frozen=True)
class PriceTable:
    """Bids as numbers: ``load[p] + dur[p][i]`` is peer p's finish for item i alone."""

    peers: tuple[str, ...]
    items: tuple[str, ...]
    load: tuple[float, ...]
    dur: tuple[tuple[float, ...], ...]
    """``dur[p][i]``; INF where peer p did not price item i."""

    @classmethod
    def from_bids(cls, items: Sequence[str], bids: Sequence[Bid]) -> PriceTable:
        live = sorted((b for b in bids if not b.declined), key=lambda b: b.bidder)
        return cls(
            tuple(b.bidder for b in live),
            tuple(items),
            tuple(b.backlog for b in live),
            tuple(tuple(b.duration.get(i, INF) for i in items) for b in live),
        )

    def assignment(self, owner_idx: Sequence[int]) -> Assignment:
        """Turn ``owner_idx[i]`` (peer index per item, -1 = nobody) into an Assignment."""
        finish: dict[str, float] = {}
        owner: dict[str, str] = {}
        unplaced: list[str] = []
        for i, p in enumerate(owner_idx):
            if p < 0:
                unplaced.append(self.items[i])
                continue
            name = self.peers[p]
            owner[self.items[i]] = name
            finish[name] = finish.get(name, self.load[p]) + self.dur[p][i]
        return Assignment(owner, finish, tuple(unplaced))


# ---- many items: reverse auction + local search ------------------------------------------


def reverse_auction(items: Sequence[str], bids: Sequence[Bid], improve: bool = True) -> Assignment:
    """Sell ``items`` to the lowest predicted finish, one at a time, largest first."""
    t = PriceTable.from_bids(items, bids)
    return t.assignment(_greedy_then_search(t, improve))


def _greedy_then_search(t: PriceTable, improve: bool) -> list[int]:
    n_p, n_i = len(t.peers), len(t.items)
    finish = list(t.load)
    owner = [-1] * n_i

    def size(i: int) -> float:
        return min((t.dur[p][i] for p in range(n_p)), default=INF)

    order = sorted(range(n_i), key=lambda i: (-size(i) if size(i) < INF else INF, i))
    for i in order:
        best = min(range(n_p), key=lambda p: (finish[p] + t.dur[p][i], p), default=-1)
        if best < 0 or t.dur[best][i] == INF:
            continue
        owner[i] = best
        finish[best] += t.dur[best][i]
    if not improve:
        return owner
    _local_search(t, owner, finish)
    return _perturb_and_search(t, owner, finish)


def _finishes(t: PriceTable, owner: Sequence[int]) -> list[float]:
    fin = list(t.load)
    for i, p in enumerate(owner):
        if p >= 0:
            fin[p] += t.dur[p][i]
    return fin


def _key(t: PriceTable, owner: Sequence[int], finish: Sequence[float]) -> tuple[float, float]:
    """(makespan, sum of squared finishes) over the peers that won something.

    A peer that wins nothing does not count, however long its backlog: leaving a
    busy peer out entirely is often the best move. The squared sum breaks ties so
    that the search keeps evening out the peers below the makespan, which opens
    the moves that later lower it.
    """
    used = set(owner)
    span = 0.0
    sq = 0.0
    for p in range(len(t.peers)):
        if p in used:
            span = max(span, finish[p])
            sq += finish[p] * finish[p]
    return span, sq


def _better(a: tuple[float, float], b: tuple[float, float]) -> bool:
    tol = EPS * max(1.0, b[0])
    return a[0] < b[0] - tol or (a[0] <= b[0] + tol and a[1] < b[1] - tol * max(1.0, b[1]))


def _local_search(t: PriceTable, owner: list[int], finish: list[float]) -> None:
    """Best-improvement descent over single-item moves and pairwise swaps.

    Each accepted step strictly lowers the (makespan, squared sum) key, a finite
    set of assignments: it terminates.
    """
    n_p, n_i = len(t.peers), len(t.items)
    cur = _key(t, owner, finish)
    while True:
        best: tuple[tuple[float, float], list[tuple[int, int]]] | None = None
        for i in range(n_i):
            p = owner[i]
            if p < 0:
                continue
            for q in range(n_p):
                if q == p or t.dur[q][i] == INF:
                    continue
                owner[i] = q
                finish[p] -= t.dur[p][i]
                finish[q] += t.dur[q][i]
                k = _key(t, owner, finish)
                owner[i] = p
                finish[p] += t.dur[p][i]
                finish[q] -= t.dur[q][i]
                if _better(k, cur) and (best is None or k < best[0]):
                    best = (k, [(i, q)])
            for j in range(i + 1, n_i):
                q = owner[j]
                if q < 0 or q == p or t.dur[q][i] == INF or t.dur[p][j] == INF:
                    continue
                dp = t.dur[p][j] - t.dur[p][i]
                dq = t.dur[q][i] - t.dur[q][j]
                finish[p] += dp
                finish[q] += dq
                k = _key(t, owner, finish)
                finish[p] -= dp
                finish[q] -= dq
                if _better(k, cur) and (best is None or k < best[0]):
                    best = (k, [(i, q), (j, p)])
        if best is None:
            return
        for i, q in best[1]:
            p = owner[i]
            finish[p] -= t.dur[p][i]
            finish[q] += t.dur[q][i]
            owner[i] = q
        cur = best[0]


def _perturb_and_search(
    t: PriceTable, owner: list[int], finish: list[float], rounds: int = 100
) -> list[int]:
    """Iterated local search: kick the best assignment so far, descend again, keep the best.

    Kicks alternate between emptying the latest peer (each of its items to the
    peer that would finish it first: escapes a fast peer whose backlog alone sets
    the makespan) and two random moves. The random stream is seeded from the
    instance size, so the same bids always give the same assignment.
    """
    n_p, n_i = len(t.peers), len(t.items)
    rng = random.Random(n_i * 1009 + n_p)
    best_owner, best_key = list(owner), _key(t, owner, finish)
    for r in range(rounds):
        cur = list(best_owner)
        fin = _finishes(t, cur)
        if r % 2 == 0:
            used = {p for p in cur if p >= 0}
            if not used:
                break
            late = max(used, key=lambda p: fin[p])
            for i in [i for i, o in enumerate(cur) if o == late]:
                options = [q for q in range(n_p) if q != late and t.dur[q][i] < INF]
                if not options:
                    continue
                q = min(options, key=lambda q: fin[q] + t.dur[q][i])
                fin[late] -= t.dur[late][i]
                fin[q] += t.dur[q][i]
                cur[i] = q
        else:
            for _kick in range(2):
                i = rng.randrange(n_i)
                q = rng.randrange(n_p)
                if cur[i] < 0 or t.dur[q][i] == INF:
                    continue
                fin[cur[i]] -= t.dur[cur[i]][i]
                fin[q] += t.dur[q][i]
                cur[i] = q
        _local_search(t, cur, fin)
        k = _key(t, cur, fin)
        if _better(k, best_key):
            best_owner, best_key = cur, k
    return best_owner


def optimal_assignment(t: PriceTable) -> tuple[float, list[int]]:
    """Exact minimum makespan, by dynamic programming over subsets of items.

    ``best[k][S]`` = least makespan giving item set S to the first k peers. The
    reference for the heuristic on small cases (2^items x 3^items work).
    """
    n_p, n_i = len(t.peers), len(t.items)
    full = (1 << n_i) - 1
    best: list[float] = [0.0] + [INF] * full
    choice: list[list[int]] = []
    for p in range(n_p):
        cost = [0.0] * (full + 1)
        for s in range(1, full + 1):
            low = (s & -s).bit_length() - 1
            cost[s] = cost[s & (s - 1)] + t.dur[p][low]
        nxt = [INF] * (full + 1)
        pick = [0] * (full + 1)
        for s in range(full + 1):
            sub = s
            while True:
                own = t.load[p] + cost[sub] if sub else 0.0
                v = max(best[s ^ sub], own)
                if v < nxt[s]:
                    nxt[s], pick[s] = v, sub
                if sub == 0:
                    break
                sub = (sub - 1) & s
        best = nxt
        choice.append(pick)
    owner = [-1] * n_i
    s = full
    for p in range(n_p - 1, -1, -1):
        sub = choice[p][s]
        for i in range(n_i):
            if sub >> i & 1:
                owner[i] = p
        s ^= sub
    return best[full], owner


# ---- one item per peer: Bertsekas' epsilon-auction -----------------------------------------


def epsilon_auction(cost: Sequence[Sequence[float]], eps: float) -> list[int]:
    """Assign each row (person) a distinct column (object) with near-minimal total cost.

    Bertsekas' auction: an unassigned person bids for its best object (least
    ``cost + price``), raising that object's price by the gap to its second best
    plus ``eps``, and evicts the object's previous owner. The result is within
    ``n * eps`` of the optimal total (exactly optimal for integer costs when
    ``eps < 1/n``). INF marks forbidden pairs. Needs as many columns as rows.

    With fewer rows than columns, zero-cost dummy rows make the problem square
    (the asymmetric auction would need every unassigned object at the lowest
    price, which warm-started prices break). Epsilon scaling (start coarse,
    divide by 5, keep the prices) avoids the long price wars a tiny ``eps``
    causes among persons that want the same object.
    """
    n = len(cost)
    m = len(cost[0]) if n else 0
    if n > m:
        raise InfeasibleAssignment(f"{n} items cannot go one each to {m} peers")
    if n == 0:
        return []
    square = [list(row) for row in cost] + [[0.0] * m for _ in range(m - n)]
    finite = [c for row in cost for c in row if c < INF]
    spread = max(finite) - min(finite) if finite else 0.0
    price = [0.0] * m
    step = max(spread / 2, eps)
    while True:
        got = _auction_phase(square, price, step, spread)
        if step <= eps:
            return got[:n]
        step = max(step / 5, eps)


def _auction_phase(
    cost: Sequence[Sequence[float]], price: list[float], eps: float, spread: float
) -> list[int]:
    """One Gauss-Seidel auction at a fixed ``eps`` (updates ``price`` in place)."""
    m = len(cost)
    jump = spread + eps  # the increment when a person has a single feasible object
    cap = max(price, default=0.0) + (spread + 2 * jump) * (m + 1) ** 2
    holder = [-1] * m
    got = [-1] * m
    queue = deque(range(m))
    while queue:
        i = queue.popleft()
        best_j, best_v, second_v = -1, INF, INF
        for j in range(m):
            if cost[i][j] == INF:
                continue
            v = cost[i][j] + price[j]
            if v < best_v:
                best_j, best_v, second_v = j, v, best_v
            elif v < second_v:
                second_v = v
        if best_j < 0:
            raise InfeasibleAssignment(f"item {i} has no priced peer")
        price[best_j] += (second_v - best_v if second_v < INF else jump) + eps
        if price[best_j] > cap:
            # Prices only climb this far when some persons compete for too few objects.
            raise InfeasibleAssignment("no assignment gives every item its own priced peer")
        if holder[best_j] >= 0:
            got[holder[best_j]] = -1
            queue.append(holder[best_j])
        holder[best_j] = i
        got[i] = best_j
    return got


def bottleneck_assignment(cost: Sequence[Sequence[float]]) -> list[int]:
    """One column per row minimising the largest cost, then the total among those."""
    n = len(cost)
    if n == 0:
        return []
    levels = sorted({c for row in cost for c in row if c < INF})
    lo, hi = 0, len(levels) - 1
    if not _feasible(cost, levels[hi]):
        raise InfeasibleAssignment("no assignment gives every item its own priced peer")
    while lo < hi:
        mid = (lo + hi) // 2
        if _feasible(cost, levels[mid]):
            hi = mid
        else:
            lo = mid + 1
    cap = levels[lo]
    capped = [[c if c <= cap else INF for c in row] for row in cost]
    scale = max(abs(levels[0]), abs(cap), 1e-9)
    return epsilon_auction(capped, eps=scale * 1e-7 / n)


def _feasible(cost: Sequence[Sequence[float]], cap: float) -> bool:
    n = len(cost)
    zero_one = [[0.0 if c <= cap else 1.0 for c in row] for row in cost]
    got = epsilon_auction(zero_one, eps=1.0 / (n + 1))
    return all(zero_one[i][j] == 0.0 for i, j in enumerate(got))


def place_one_each(items: Sequence[str], bids: Sequence[Bid]) -> Assignment:
    """Give each item to a different bidder, minimising the latest predicted finish."""
    t = PriceTable.from_bids(items, bids)
    cost = [[t.load[p] + t.dur[p][i] for p in range(len(t.peers))] for i in range(len(t.items))]
    got = bottleneck_assignment(cost)
    return t.assignment(got)


def assign(items: Sequence[str], bids: Sequence[Bid]) -> Assignment:
    """The default winner determination of an auction round."""
    return reverse_auction(items, bids)
