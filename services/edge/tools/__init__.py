"""Tools an agent calls during a call: declarations (config), runners, and the reply loop."""
