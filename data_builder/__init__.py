"""PeakClips construction, offline: video decoding, histogram scene segmentation, hierarchical captions
(scene, chapter, video), per-query scene relevance scores, P1/P2 key clips, and the training examples of
each stage (SFT1, SFT2, GRPO) rendered with the selector's one prompt function.
"""
