"""The live service: one package per pipeline step (speech → transcribe → faces → emotion → publish), served by serve/."""
