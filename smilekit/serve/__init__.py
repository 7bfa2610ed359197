"""Serving the app to many visitors: the Voilà server, admission, forked kernels and the websocket guard."""
