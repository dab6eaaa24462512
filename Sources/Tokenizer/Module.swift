// The Tokenizer module: SentencePiece and byte-level BPE from GGUF metadata, incremental detokenizer.
