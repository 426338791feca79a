"""
The application: options, configuration, the services of twistd socks and
of the lean launcher, worker processes, the status page, metrics and logs.
"""
