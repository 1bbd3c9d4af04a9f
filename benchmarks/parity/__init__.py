"""Whether two ways of computing the same embedding agree: INT8 against fp32 (on every CPU path), our MobileNet-0.25 against Keras."""
