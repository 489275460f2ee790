"""Providers: the LLM that writes a message and the sender that delivers its parts."""

from listener.providers.base import LLM, Sender, SentPart

__all__ = ["LLM", "Sender", "SentPart"]
