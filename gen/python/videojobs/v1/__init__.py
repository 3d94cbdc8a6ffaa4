"""Generated from proto/videojobs/v1 by `make proto`. Do not edit."""
