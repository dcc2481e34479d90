# LemonLDAP::NG refuses to start without a cookie domain, and for a portal on 127.0.0.1 it
# then sends `Domain=127.0.0.1`-style cookies that browsers and HTTP clients reject for an IP
# address. Once the configuration is loaded, this drops the domain: the portal's cookie
# becomes host-only, as a provider on its own host name would have it.
package AccountServerTests::HostOnlyCookie;

use strict;
use Mouse;

extends 'Lemonldap::NG::Portal::Main::Plugin';

sub init {
    my ($self) = @_;
    $self->conf->{domain} = '';
    return 1;
}

1;
