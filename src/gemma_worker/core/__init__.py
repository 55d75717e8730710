"""Sans-I/O core: request validation, event framing, stream state and limits as plain classes."""
