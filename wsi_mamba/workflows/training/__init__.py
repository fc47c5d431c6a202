"""Training: the tile encoder (on labelled patches or annotated slide tiles), the slide model on feature stores,
the optimiser step they share, and the configs every training default comes from."""
