"""Notifications: what tells an owner that a job or bulk job ended, and how
it reaches them (a signed webhook, a mail), with one delivery mechanism for
every channel: the `notifications` collection holds a delivery state per
channel, and `sender.Notifier` claims due deliveries and sends them.

A channel is one module here that registers itself (model/channels.py) as
it is imported; importing this package imports them all, so that the
registry is complete wherever a notify module is in use."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
