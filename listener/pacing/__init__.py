"""Pacing: send windows, daily caps, gaps, the sender pool and each number's health."""
