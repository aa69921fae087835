"""The student's training loop and its batching."""
