# OpenID Connect Back-Channel Logout 1.0 for LemonLDAP::NG 2.16, whose OpenID Connect issuer
# leaves it as a TODO (issue #1194): at logout, every relying party of the session whose
# logout type is "back" receives a logout token, signed with the provider's key, by a POST
# to its logout URL. Loaded through `customPlugins` by the test suite's provider (llng.py).
package AccountServerTests::BackChannelLogout;

use strict;
use Mouse;
use LWP::UserAgent;
use Lemonldap::NG::Portal::Main::Constants qw(PE_OK);

extends 'Lemonldap::NG::Portal::Main::Plugin';

use constant beforeLogout => 'sendLogoutTokens';

sub init { 1 }

sub sendLogoutTokens {
    my ( $self, $req ) = @_;
    my $oidc = $self->p->loadedModules->{'Lemonldap::NG::Portal::Issuer::OpenIDConnect'}
      or return PE_OK;
    my $connected = $req->userData->{_oidcConnectedRP} or return PE_OK;
    my $ua = LWP::UserAgent->new( timeout => 5 );
    foreach my $rp ( grep /\w/, split( ',', $connected ) ) {
        my $options = $self->conf->{oidcRPMetaDataOptions}->{$rp} or next;
        next unless ( $options->{oidcRPMetaDataOptionsLogoutType} || '' ) eq 'back';
        my $url = $options->{oidcRPMetaDataOptionsLogoutUrl} or next;
        my $payload = {
            iss    => $oidc->iss,
            aud    => $options->{oidcRPMetaDataOptionsClientID},
            iat    => time,
            exp    => time + 120,
            jti    => join( '', map { sprintf( '%02x', int( rand(256) ) ) } 1 .. 16 ),
            sub    => $oidc->getUserIDForRP( $req, $rp, $req->userData ),
            events => { 'http://schemas.openid.net/event/backchannel-logout' => {} },
        };
        my $token = $oidc->createJWT( $payload, 'RS256', $rp, 'logout+jwt' );
        my $response = $ua->post( $url, { logout_token => $token } );
        $self->logger->notice( "back-channel logout to $rp: " . $response->code );
    }
    return PE_OK;
}

1;
