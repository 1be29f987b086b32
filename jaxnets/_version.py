"""The version of jaxnets, in a room of its own on the lowest floor: the face re-exports it and the model card
records it, so that nothing below the face imports the face. Keep it equal to pyproject.toml's `version`."""

__version__ = "0.1.0"
