"""The page people use: the widget app (:mod:`.ui`), the live camera (:mod:`.camera`) and the HTML it shows (:mod:`.render`)."""
