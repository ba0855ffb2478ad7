"""Faithful stand-ins for the two services the bridge talks to, for tests, the demo and replay.

``realtime_simulator`` is a websocket server that speaks the OpenAI / Azure Realtime API
(GA and preview dialects, function calls scripted with ``ScriptedAnswer`` and ``ScriptedCall``
included; its parts are ``vad``, ``session_config`` and ``realtime_session``);
``twilio_simulator`` plays a Twilio call: the signed voice webhook and the Media Stream client
that sends caller audio and plays back what the bridge returns through ``twilio_playback``, the
one model of Twilio's playback that the load benchmark and the replay share.
``twilio_api`` stands in for Twilio's REST API and acts on those simulated calls (hang up, new TwiML,
``<Dial>``). All run over real loopback sockets and record what happened so tests can assert on it.
"""
