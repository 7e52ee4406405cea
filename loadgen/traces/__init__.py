"""Real-trace replay: readers for public LLM-serving traces, rate/time/length scaling, prompts without text,
trace statistics (``loadgen traces info``), the catalog of public traces and their download, and synthetic
arrival models (time-varying rate, Markov-modulated bursts).

Modules are imported where used; importing the package itself does nothing.
"""
