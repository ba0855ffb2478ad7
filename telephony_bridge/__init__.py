"""Put a speech-to-speech Realtime model on a Twilio phone number."""

__version__ = "0.1.0"
