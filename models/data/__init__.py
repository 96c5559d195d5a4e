"""The data: the embedded corpus, its tokenizer, train/validation split and batches."""
