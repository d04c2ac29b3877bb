"""trurn: a Trio-native runtime for turn-based LLM agents."""
