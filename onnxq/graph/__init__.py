"""Load, select, rewrite and save the graph: the stages that touch the model itself."""
