"""What outlives a process: the model identity learned state is keyed by, the decoder's state file,
and the store of tuned skip sets."""
