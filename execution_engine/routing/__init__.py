"""Routing: Rules, Routes and the Dispatcher that picks an execution system for each job."""
