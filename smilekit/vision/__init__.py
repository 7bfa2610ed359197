"""Photos in, faces out: decoding any common image format (:mod:`.images`) and finding and cutting faces (:mod:`.faces`)."""
