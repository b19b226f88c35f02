"""Data-driven steps: layer statistics, GPTQ, bias correction, measured sensitivity, widths."""
