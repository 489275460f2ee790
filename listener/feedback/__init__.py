"""Delivery feedback: Evolution's webhook events, from the door to the database."""
