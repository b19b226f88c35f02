"""After the rewrite: validation against the float model, the report, decompression."""
