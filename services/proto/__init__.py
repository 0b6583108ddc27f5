"""Generated from protos/parley/v1 by scripts/gen_protos.py. Do not edit."""
