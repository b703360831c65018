"""Names a user chooses from on the command line, free of TensorFlow so that the
`camserve` parsers build at once; the modules that implement them use these."""

PREPROCESS_MODES = ("none", "scale", "tf", "caffe", "torch")
HEADS = ("softmax", "sigmoid", "binary", "linear")
