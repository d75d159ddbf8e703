"""The char-rnn application on top of the library (Karpathy's 2015 char-rnn): corpus and
vocabulary (corpus, data), the model (model: embedding -> FastLSTM -> linear, generation),
training (train, checkpoint, distributed), sampling and evaluation (sample, eval), and what
the cells learned (cells, visualize); cli holds the shared command-line helpers. Run it as
`python -m fastlstm.train | sample | eval | visualize`. The library (fastlstm) never imports
this package."""
