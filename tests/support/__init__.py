"""What the test tiers share: tiny models, the real-model cache, the CLI runner and bad-input harness, the golden
harness, the layout checker, the stand-in Hub, reference computations and the test sentences."""
