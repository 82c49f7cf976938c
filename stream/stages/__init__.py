"""The processors of a participant's pipeline, in chain order (put together in stream/session.py):

audio:  Resample → ScoreSpeech → Segment → Transcribe → FaceWindows → Estimate → Refine   (speech.py,
        transcribe.py, faces.py, emotion.py)
video:  VideoFrames (faces.py): frames into the face analysis that FaceWindows reads per utterance
"""
