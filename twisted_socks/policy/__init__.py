"""
Who may do what: access requests and decisions, the sockd.conf rules
language, %-tokens and rule commands, reloads and the check command.
"""
