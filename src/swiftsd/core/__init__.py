"""One request from arguments to tokens: the typed request, its run state, the planner, the decode loop.

``request`` parses what the user passed once; ``run`` holds one request's state while it
decodes; ``planner`` makes every per-step choice by cost; ``decoder`` is the loop of named
steps; ``learned`` composes the components' ``state_dict`` into the decoder's.
"""
