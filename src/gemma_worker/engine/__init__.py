"""The inference engine: the only code that touches llama.cpp, on its own thread."""
