"""Integration tests: whole verbs on tiny and real models, the stand-in Hub, recipes, the golden comparison."""
