"""The two contracts and what they stand on: Architecture (model), Task (task), the text tasks'
base TextTask (text_task), the windows cut from a split, sizing a model."""
