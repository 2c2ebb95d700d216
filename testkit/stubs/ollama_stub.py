"""The embeddings stub seen as an Ollama server: base_url is the root that /api/embed hangs off.

    with OllamaStub(dims=768) as stub:
        stub.base_url                            # http://127.0.0.1:PORT

    uv run python -m testkit.stubs.ollama_stub --port 0 --dims 768   # prints its URL

One server answers both protocols (see testkit.stubs.openai_stub for the control API and stats);
this class only changes which URL `base_url` gives.
"""

from __future__ import annotations

from testkit.stubs.openai_stub import OpenAIStub, main


class OllamaStub(OpenAIStub):
    """OpenAIStub whose base_url is the Ollama root (POST {base_url}/api/embed)."""

    @property
    def base_url(self) -> str:
        return self.ollama_url

    def __enter__(self) -> OllamaStub:
        self.start()
        return self


if __name__ == "__main__":
    main(OllamaStub)
