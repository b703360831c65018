"""Names a user chooses from on the command line, free of TensorFlow so that the
`camserve` parsers build at once; the modules that implement them use these."""

PREPROCESS_MODES = ("none", "scale", "tf", "caffe", "torch")
HEADS = ("softmax", "sigmoid", "binary", "linear")
INPUT_CONTRACTS = ("images", "model")  # camserve's uint8 images only, or also the model's own input
