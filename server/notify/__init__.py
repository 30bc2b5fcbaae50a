"""Notifications: what tells an owner that a job or bulk job ended, and how
it reaches them (a signed webhook, a mail), with one delivery mechanism for
every channel: the `notifications` collection holds a delivery state per
channel, and `sender.Notifier` claims due deliveries and sends them."""
