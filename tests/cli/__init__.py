"""The command line: the one-line error guard, the torch-free --help, and the bad-input matrix of every verb."""
