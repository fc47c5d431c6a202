"""The per-slide encoding engine: a slide's tissue tiles to feature vectors, in a feature mode, and the stores
that keep them (:mod:`.encode`, :mod:`.modes`, :mod:`.tile_mode`, :mod:`.region_mode`, :mod:`.store`)."""
