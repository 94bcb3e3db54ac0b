"""Jobs: what a command does, end to end. The only layer that uses both training and evaluation."""
