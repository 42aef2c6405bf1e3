"""Inference: :mod:`~humo.inference.generate` (THE path from a request to a video and its record, for every
caller: one request type, one set of limits, one pipeline factory, guidance that follows the model),
:mod:`~humo.inference.pipeline` (HumoPipeline: one video from text, reference image and audio, with HuMo's
time-adaptive guidance), :mod:`~humo.inference.long_video` (sliding latent windows for audio longer than one
window) and :mod:`~humo.inference.batch` (``humo generate``: a requests file -> mp4s with their audio + sidecars).
"""
