"""CLI verbs. Each module imports the library (and so torch) only inside its command functions."""
