"""The federation a method talks to: clients as data (``client_data``), the engines that answer
requests for any of them (``virtual_clients``), the runtimes that reach them (``runtime``: in
process or a Ray pool), the server with its own data and its solvers, and the oracle that
turns a method's questions into requests and counts the communication."""
