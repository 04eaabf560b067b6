"""Trainers: thin subclasses of TRL's, one method per module."""
