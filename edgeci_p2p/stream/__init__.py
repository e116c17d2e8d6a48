"""Streaming frames through the cluster: frame sources, frames in flight, stream statistics.

- :mod:`edgeci_p2p.stream.stats` (pure): latency percentiles and frames per second.
- :mod:`edgeci_p2p.stream.sources`: synthetic camera, image folder, video file, camera index.
- :mod:`edgeci_p2p.stream.pipeline`: up to K frames in flight over one client connection.
- :mod:`edgeci_p2p.stream.annotate`: top-5 drawn on frames, written as PNGs or an MP4.
"""
