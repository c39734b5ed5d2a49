"""Shadow comparisons: after a student-served (or escalated) request is answered, the teacher scores the student's
answer and answers itself, off the request path; the divergence goes to metrics and to the shadow store."""
