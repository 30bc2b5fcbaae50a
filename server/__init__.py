"""The genjobs service, one room per concern.

runtime/ (process, settings, assembly), api/ (gRPC and HTTP faces, auth),
services/ (the domain, per aggregate), dispatch/ (running jobs, fair share),
notify/ (notifications), generators/ (content generators), storage/ (MongoDB),
model/ (states, clock, domain errors), web/ (the dashboard's static files).
Target layering: runtime -> api -> services -> dispatch | notify | generators
-> storage -> model.
"""
