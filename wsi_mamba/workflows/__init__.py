"""The workflows behind the CLI: extract features, train the encoder and the slide model, evaluate, predict."""
